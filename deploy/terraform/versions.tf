terraform {
  # 1.5: check blocks; preconditions and terraform_data are older. OpenTofu >= 1.6 works too.
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.x: cloudfunctions2 build service account, Firestore database/field/index as used here.
      version = ">= 6.10.0, < 8.0.0"
    }
    time = {
      source = "hashicorp/time"
      # time_sleep: wait for service-agent IAM to propagate before creating Eventarc triggers.
      version = ">= 0.9.0, < 1.0.0"
    }
    archive = {
      source = "hashicorp/archive"
      # 2.4: glob patterns (**) in archive_file excludes.
      version = ">= 2.4.0, < 3.0.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
