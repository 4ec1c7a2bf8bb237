variable "project_id" {
  description = "The GCP project to deploy into (an existing project with billing enabled)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a GCP project id: 6-30 characters, lowercase letters, digits and hyphens."
  }
}

variable "region" {
  description = "Region of the network, the cluster (regional control plane) and the Artifact Registry."
  type        = string
  default     = "europe-west1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must look like europe-west1 or us-central1."
  }
}

variable "environment" {
  description = "Environment name, used in resource names and labels: dev or prod."
  type        = string
  default     = "dev"

  validation {
    condition     = contains(["dev", "prod"], var.environment)
    error_message = "environment must be dev or prod (the kustomize overlays that exist)."
  }
}

variable "regional_cluster" {
  description = "true: a regional control plane (replicated over the region's zones, prod). false: a zonal one in node_zones[0], which GKE's free tier covers (dev)."
  type        = bool
  default     = false
}

variable "node_zones" {
  description = "Zones (within region) for the nodes. Three zones let Kafka and Cassandra spread their replicas; one zone costs less (dev)."
  type        = list(string)
  default     = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]

  validation {
    condition     = length(var.node_zones) >= 1 && length(var.node_zones) <= 3
    error_message = "node_zones must list one to three zones."
  }
}

variable "subnet_cidr" {
  description = "Primary range of the subnet (nodes)."
  type        = string
  default     = "10.10.0.0/20"

  validation {
    condition     = can(cidrnetmask(var.subnet_cidr))
    error_message = "subnet_cidr must be an IPv4 CIDR block."
  }
}

variable "pods_cidr" {
  description = "Secondary range for pod IPs (VPC-native cluster)."
  type        = string
  default     = "10.20.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.pods_cidr))
    error_message = "pods_cidr must be an IPv4 CIDR block."
  }
}

variable "services_cidr" {
  description = "Secondary range for Service cluster IPs."
  type        = string
  default     = "10.30.0.0/20"

  validation {
    condition     = can(cidrnetmask(var.services_cidr))
    error_message = "services_cidr must be an IPv4 CIDR block."
  }
}

variable "master_cidr" {
  description = "The /28 for the private control plane's endpoint peering."
  type        = string
  default     = "172.16.0.0/28"

  validation {
    condition     = can(cidrnetmask(var.master_cidr)) && endswith(var.master_cidr, "/28")
    error_message = "master_cidr must be an IPv4 /28 block."
  }
}

variable "authorized_networks" {
  description = "CIDR blocks allowed to reach the cluster's API endpoint (kubectl, Ansible). Keep it to your office/VPN or CI egress; an empty list leaves the public endpoint closed to everyone."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))
  default = []

  validation {
    condition     = alltrue([for n in var.authorized_networks : can(cidrnetmask(n.cidr_block))])
    error_message = "every authorized_networks entry needs a valid IPv4 cidr_block."
  }
}

variable "release_channel" {
  description = "GKE release channel: RAPID, REGULAR or STABLE."
  type        = string
  default     = "REGULAR"

  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "gateway_api" {
  description = "Turn on GKE's Gateway API (gateway_api_config, channel CHANNEL_STANDARD): needed when Ansible's ui_entry is gke-gateway (overlay prod-gateway)."
  type        = bool
  default     = false
}

variable "cert_manager_dns_project" {
  description = "Project of the Cloud DNS zone that holds ui_host, for Let's Encrypt's DNS-01 challenge (Ansible's ui_tls_acme_solver: dns01). Set: a service account for cert-manager with roles/dns.admin there, bound to cert-manager/cert-manager by Workload Identity. Empty: none."
  type        = string
  default     = ""

  validation {
    condition     = var.cert_manager_dns_project == "" || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.cert_manager_dns_project))
    error_message = "cert_manager_dns_project must be empty or a GCP project id."
  }
}

variable "machine_type" {
  description = "Machine type of the node pool. dev fits e2-standard-4 (4 vCPU, 16 GiB); prod wants n2-standard-8 for three Kafka and three Cassandra nodes beside the services."
  type        = string
  default     = "e2-standard-4"
}

variable "node_count_min" {
  description = "Minimum nodes per zone (cluster autoscaler)."
  type        = number
  default     = 1

  validation {
    condition     = var.node_count_min >= 1 && var.node_count_min <= 10
    error_message = "node_count_min must be between 1 and 10."
  }
}

variable "node_count_max" {
  description = "Maximum nodes per zone (cluster autoscaler)."
  type        = number
  default     = 3

  validation {
    condition     = var.node_count_max >= 1 && var.node_count_max <= 20
    error_message = "node_count_max must be between 1 and 20."
  }
}

variable "node_disk_size_gb" {
  description = "Boot disk size of each node, GB (data lives on persistent volumes)."
  type        = number
  default     = 50

  validation {
    condition     = var.node_disk_size_gb >= 30
    error_message = "node_disk_size_gb must be at least 30."
  }
}

variable "spot_nodes" {
  description = "Use Spot VMs for the node pool (about 60-90% cheaper, may be preempted): fine for dev, not for prod."
  type        = bool
  default     = false
}

variable "deletion_protection" {
  description = "Protect the cluster from `destroy`. Set false before tearing an environment down."
  type        = bool
  default     = true
}

variable "image_retention_count" {
  description = "Artifact Registry keeps this many most recent versions of each image; older untagged ones are deleted."
  type        = number
  default     = 20

  validation {
    condition     = var.image_retention_count >= 1
    error_message = "image_retention_count must be at least 1."
  }
}

variable "labels" {
  description = "Extra labels put on every resource that takes labels (cost attribution)."
  type        = map(string)
  default     = {}
}
