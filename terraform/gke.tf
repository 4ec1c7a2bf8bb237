# A GKE Standard cluster (regional for prod, zonal for dev: var.regional_cluster): private nodes
# (no public IPs), a public control-plane endpoint restricted to var.authorized_networks,
# Dataplane V2 (enforces NetworkPolicies), Workload Identity, Shielded Nodes, and one autoscaled
# node pool run by a least-privilege service account. The default node pool is removed at
# creation.

resource "google_container_cluster" "main" {
  # checkov:skip=CKV_GCP_12:NetworkPolicies are enforced by Dataplane V2 (datapath_provider), which replaces the network_policy addon checkov looks for
  # checkov:skip=CKV_GCP_66:Binary Authorization needs an attestation pipeline; images come only from the project's own Artifact Registry (see deploy/README.md, hardening)
  # checkov:skip=CKV_GCP_69:the GKE metadata server is enabled on the managed node pool below; the default pool is removed at creation
  # checkov:skip=CKV_GCP_21:labels are set (resource_labels = local.labels); checkov cannot evaluate them once location and node_locations are conditional
  # checkov:skip=CKV_GCP_65:Google Groups for RBAC needs a Workspace domain, which this project does not assume
  name                = local.name
  location            = local.cluster_location
  node_locations      = local.node_locations
  network             = google_compute_network.vpc.id
  subnetwork          = google_compute_subnetwork.nodes.id
  deletion_protection = var.deletion_protection

  remove_default_node_pool = true
  initial_node_count       = 1

  datapath_provider           = "ADVANCED_DATAPATH"
  networking_mode             = "VPC_NATIVE"
  enable_intranode_visibility = true

  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = false
    master_ipv4_cidr_block  = var.master_cidr
  }

  master_authorized_networks_config {
    dynamic "cidr_blocks" {
      for_each = var.authorized_networks
      content {
        cidr_block   = cidr_blocks.value.cidr_block
        display_name = cidr_blocks.value.display_name
      }
    }
  }

  release_channel {
    channel = var.release_channel
  }

  # The Gateway API's CRDs and GKE's Gateway controller, for ui_entry: gke-gateway (Ansible).
  dynamic "gateway_api_config" {
    for_each = var.gateway_api ? ["CHANNEL_STANDARD"] : []
    content {
      channel = gateway_api_config.value
    }
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  enable_shielded_nodes = true

  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  logging_config {
    enable_components = ["SYSTEM_COMPONENTS", "WORKLOADS"]
  }

  monitoring_config {
    enable_components = ["SYSTEM_COMPONENTS"]
    managed_prometheus {
      # kube-prometheus-stack (installed by Ansible) does the scraping.
      enabled = false
    }
  }

  addons_config {
    http_load_balancing {
      disabled = false
    }
    horizontal_pod_autoscaling {
      disabled = false
    }
  }

  maintenance_policy {
    recurring_window {
      start_time = "2026-01-03T02:00:00Z"
      end_time   = "2026-01-03T06:00:00Z"
      recurrence = "FREQ=WEEKLY;BYDAY=SA,SU"
    }
  }

  resource_labels = local.labels

  # The node pool is managed below; its changes must not recreate the cluster.
  lifecycle {
    ignore_changes = [initial_node_count]
  }

  depends_on = [google_project_service.apis]
}

resource "google_container_node_pool" "main" {
  name     = "main"
  cluster  = google_container_cluster.main.id
  location = local.cluster_location

  initial_node_count = var.node_count_min

  autoscaling {
    min_node_count = var.node_count_min
    max_node_count = var.node_count_max
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  upgrade_settings {
    max_surge       = 1
    max_unavailable = 0
  }

  node_config {
    machine_type    = var.machine_type
    disk_size_gb    = var.node_disk_size_gb
    disk_type       = "pd-balanced"
    image_type      = "COS_CONTAINERD"
    spot            = var.spot_nodes
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    tags            = [local.name]
    labels          = local.labels

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    metadata = {
      disable-legacy-endpoints = "true"
    }
  }
}
