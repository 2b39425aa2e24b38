variable "app_name" {
  description = "Name of the application in the Juju model."
  type        = string
  default     = "network-isolation"
}

variable "model_uuid" {
  description = "UUID of the model of the principals to relate to (Sunbeam on MAAS: openstack-machines)."
  type        = string

  validation {
    condition     = trimspace(var.model_uuid) != ""
    error_message = "model_uuid must not be empty."
  }
}

variable "channel" {
  description = "Channel the charm is deployed from."
  type        = string
  default     = "latest/stable"
}

variable "revision" {
  description = "Revision of the charm; null follows the channel."
  type        = number
  default     = null
  nullable    = true
}

variable "base" {
  description = "Ubuntu base of the charm: the principals' machines' base."
  type        = string
  default     = "ubuntu@24.04"

  validation {
    condition     = contains(["ubuntu@24.04", "ubuntu@22.04"], var.base)
    error_message = "base must be one of ubuntu@24.04, ubuntu@22.04."
  }
}

variable "config" {
  description = <<-EOT
    Charm configuration as key/value pairs, values as strings as `juju config` takes them.
    Keys are the charm's options (docs/reference/config.md of the charm).
  EOT
  type        = map(string)
  default     = {}

  validation {
    condition = length(setsubtract(keys(var.config), [
      "roles",
      "role-table",
      "role-networks",
      "accept-denials",
      "network-cidrs",
      "client-cidrs",
      "client-cidrs-max-size-v4",
      "client-cidrs-max-size-v6",
      "enforcement",
      "strict-ports",
      "extra-ports",
      "manage-routing",
      "metrics-port",
      "peer-min-prefix-v4",
      "peer-min-prefix-v6",
      "rolling-wave-size",
      "rolling-wave-timeout",
      "rolling-canary-window",
      "rolling-canary-threshold",
    ])) == 0
    error_message = "config has a key that is not an option of the charm."
  }
}

variable "constraints" {
  description = "Juju constraints. Juju refuses any for a subordinate: leave it null."
  type        = string
  default     = null
  nullable    = true

  validation {
    condition     = var.constraints == null ? true : trimspace(var.constraints) == ""
    error_message = "A subordinate application takes no constraints: its units run on its principals' machines."
  }
}

variable "endpoint_bindings" {
  description = <<-EOT
    Spaces to bind: an entry without endpoint sets the default space, and one per network
    (data, internal, management, public, storage, storage-cluster) binds it to the space that
    carries it. On MAAS there is no automatic default space: set one.
  EOT
  type = set(object({
    space    = string
    endpoint = optional(string)
  }))
  default  = []
  nullable = false

  validation {
    condition = alltrue([
      for binding in var.endpoint_bindings : binding.endpoint == null ? true : contains([
        "juju-controller-node",
        "control-node",
        "compute-node",
        "storage-node",
        "network-node",
        "region-controller-node",
        "sunbeam-node",
        "service-ports",
        "cos-agent",
        "cluster",
        "data",
        "internal",
        "management",
        "public",
        "storage",
        "storage-cluster",
      ], binding.endpoint)
    ])
    error_message = "endpoint_bindings names an endpoint or binding the charm does not have."
  }
}
