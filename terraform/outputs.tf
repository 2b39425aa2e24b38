output "app_name" {
  description = "Name of the deployed application."
  value       = juju_application.network_isolation.name
}

output "requires" {
  description = "The endpoints the application requires: a principal related over <role>-node gives its machine that role."
  value = {
    juju_controller_node   = "juju-controller-node"
    control_node           = "control-node"
    compute_node           = "compute-node"
    storage_node           = "storage-node"
    network_node           = "network-node"
    region_controller_node = "region-controller-node"
    sunbeam_node           = "sunbeam-node"
    service_ports          = "service-ports"
  }
}

output "provides" {
  description = "The endpoints the application provides."
  value = {
    cos_agent = "cos-agent"
  }
}

output "peers" {
  description = "The peer endpoints: Juju relates them itself, they are listed for bindings."
  value = {
    cluster = "cluster"
  }
}
