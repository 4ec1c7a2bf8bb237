locals {
  name             = "tickflow-${var.environment}"
  cluster_location = var.regional_cluster ? var.region : var.node_zones[0]
  labels = merge({
    app         = "tickflow"
    environment = var.environment
    managed-by  = "terraform"
  }, var.labels)
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
