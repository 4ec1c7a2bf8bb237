# One Docker repository for the five images (ingest-gateway, normalizer, trade-aggregator,
# fair-price, tickflow-admin). Old untagged versions are cleaned up.
resource "google_artifact_registry_repository" "images" {
  # checkov:skip=CKV_GCP_84:images hold no secrets; Google-managed encryption at rest is enough here (a CMEK adds a KMS key to run)
  location      = var.region
  repository_id = local.name
  description   = "tickflow service images (${var.environment})"
  format        = "DOCKER"
  labels        = local.labels

  docker_config {
    immutable_tags = var.environment == "prod"
  }

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.image_retention_count
    }
  }

  cleanup_policies {
    id     = "delete-old-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "1209600s"
    }
  }

  depends_on = [google_project_service.apis]
}
