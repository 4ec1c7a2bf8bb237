locals {
  name = "tickflow-${var.environment}"
  labels = merge({
    app         = "tickflow"
    environment = var.environment
    managed-by  = "terraform"
  }, var.labels)
}

locals {
  # A regional control plane (prod) or a zonal one in the first node zone (dev, free tier).
  cluster_location = var.regional_cluster ? var.region : var.node_zones[0]
  # A zonal cluster lists only the zones beyond its own as node locations.
  node_locations = [for zone in var.node_zones : zone if var.regional_cluster || zone != var.node_zones[0]]
}

# The APIs this configuration uses. Left enabled on destroy: other things in the project may
# depend on them.
resource "google_project_service" "apis" {
  for_each = toset([
    "compute.googleapis.com",
    "container.googleapis.com",
    "artifactregistry.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
  ])
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
