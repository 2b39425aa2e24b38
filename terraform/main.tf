# A subordinate: Juju puts a unit on every machine of a principal it is related to, so the
# application has no units, machines or placement of its own.
resource "juju_application" "network_isolation" {
  name       = var.app_name
  model_uuid = var.model_uuid

  charm {
    name     = "network-isolation"
    channel  = var.channel
    revision = var.revision
    base     = var.base
  }

  config      = var.config
  constraints = var.constraints

  # No bindings: Juju's own defaults, rather than an empty set.
  endpoint_bindings = length(var.endpoint_bindings) > 0 ? var.endpoint_bindings : null
}
