terraform {
  required_version = ">= 1.6"

  required_providers {
    juju = {
      source = "juju/juju"
      # model_uuid replaced model in 1.0; 2.x changed no resource. Sunbeam pins a 1.x release.
      version = ">= 1.0, < 3.0"
    }
  }
}
