terraform {
  # OpenTofu 1.6+ or Terraform 1.6+.
  required_version = ">= 1.6.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
  }

  # Remote state in a GCS bucket (versioned, created once by hand: see README.md). The bucket
  # and prefix come from backend.hcl at init time:
  #   tofu init -backend-config=backend.hcl
  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region
}
