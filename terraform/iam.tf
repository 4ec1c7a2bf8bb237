# The nodes' identity: only what a GKE node needs (write logs and metrics, read the images from
# this one repository) instead of the Compute Engine default account's Editor role.
resource "google_service_account" "nodes" {
  account_id   = "${local.name}-nodes"
  display_name = "tickflow ${var.environment} GKE nodes"
}

resource "google_project_iam_member" "nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
  ])
  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_artifact_registry_repository_iam_member" "nodes_pull" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.nodes.email}"
}

# cert-manager's identity for Let's Encrypt's DNS-01 challenge (only with
# var.cert_manager_dns_project): it writes the TXT record in the Cloud DNS zone of ui_host.
# Bound by Workload Identity to the Kubernetes service account cert-manager/cert-manager, which
# the Helm chart creates and Ansible annotates with this account's email (the
# cert_manager_dns_service_account output). roles/dns.admin because cert-manager's Cloud DNS
# solver lists the zones and changes record sets; it holds it in the DNS project only.
resource "google_service_account" "cert_manager_dns" {
  count        = var.cert_manager_dns_project == "" ? 0 : 1
  account_id   = "${local.name}-cert-manager"
  display_name = "tickflow ${var.environment} cert-manager (DNS-01 in ${var.cert_manager_dns_project})"
}

resource "google_project_iam_member" "cert_manager_dns" {
  count   = var.cert_manager_dns_project == "" ? 0 : 1
  project = var.cert_manager_dns_project
  role    = "roles/dns.admin"
  member  = "serviceAccount:${google_service_account.cert_manager_dns[0].email}"
}

resource "google_service_account_iam_member" "cert_manager_dns_workload_identity" {
  count              = var.cert_manager_dns_project == "" ? 0 : 1
  service_account_id = google_service_account.cert_manager_dns[0].name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[cert-manager/cert-manager]"
  # The workload pool exists once the cluster does.
  depends_on = [google_container_cluster.main]
}
