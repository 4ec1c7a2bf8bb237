# Read by Ansible (ansible/inventory/terraform.py runs `tofu output -json`).

output "project_id" {
  description = "The GCP project."
  value       = var.project_id
}

output "region" {
  description = "Region of the cluster and the registry."
  value       = var.region
}

output "tickflow_environment" {
  description = "dev or prod: the kustomize overlay Ansible deploys (not `environment`: a reserved name in Ansible, which reads these outputs as variables)."
  value       = var.environment
}

output "cluster_name" {
  description = "GKE cluster name (gcloud container clusters get-credentials NAME --region REGION)."
  value       = google_container_cluster.main.name
}

output "cluster_location" {
  description = "GKE cluster location: the region (regional cluster) or a zone (zonal)."
  value       = google_container_cluster.main.location
}

output "cluster_endpoint" {
  description = "Public IP of the cluster's control plane (reachable from authorized_networks only)."
  value       = google_container_cluster.main.endpoint
  sensitive   = true
}

output "image_repository" {
  description = "Artifact Registry path the images are pushed to: <repository>/<service>:<tag>."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "node_service_account" {
  description = "Email of the nodes' service account."
  value       = google_service_account.nodes.email
}

output "network" {
  description = "VPC name."
  value       = google_compute_network.vpc.name
}

output "cert_manager_dns_project" {
  description = "Project of ui_host's Cloud DNS zone for cert-manager's DNS-01 challenge (empty: none). The ingress role's ui_tls_dns_project defaults to it."
  value       = var.cert_manager_dns_project
}

output "cert_manager_dns_service_account" {
  description = "Email of cert-manager's Google service account for DNS-01 (empty: none). The ingress role's ui_tls_dns_service_account defaults to it."
  value       = var.cert_manager_dns_project == "" ? "" : google_service_account.cert_manager_dns[0].email
}
