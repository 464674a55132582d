# Grafana on one VM. Variables named after option files come from the
# plan's wizard; instance_uuid is set by the marketplace.

variable "instance_uuid" {
  type = string
}

# Option parameters/flavor.yaml.
variable "flavor" {
  type = string
}

data "vkcs_images_image" "grafana" {
  # The image published for this service in the marketplace.
  name = "grafana"
}

resource "vkcs_networking_network" "net" {
  name = "grafana-${var.instance_uuid}"
}

resource "vkcs_networking_subnet" "subnet" {
  name       = "grafana-${var.instance_uuid}"
  network_id = vkcs_networking_network.net.id
  cidr       = "192.168.199.0/24"
}

resource "vkcs_networking_secgroup" "secgroup" {
  name        = "grafana-${var.instance_uuid}"
  description = "Grafana web UI"
}

resource "vkcs_networking_secgroup_rule" "http" {
  direction         = "ingress"
  port_range_min    = 3000
  port_range_max    = 3000
  protocol          = "tcp"
  security_group_id = vkcs_networking_secgroup.secgroup.id
}

# cloud-config that installs the Marketplace agent, which runs the
# ivkcs_agent_exec steps and ivkcs_agent_check checks below (VK:
# ivkcs_user_data). target_os must name the image's base OS.
resource "ivkcs_user_data" "init" {
  uuid      = var.instance_uuid
  hosts     = ["grafana-${var.instance_uuid}"]
  target_os = "almalinux9"
}

resource "vkcs_compute_instance" "grafana" {
  name               = "grafana-${var.instance_uuid}"
  flavor_id          = var.flavor
  security_group_ids = [vkcs_networking_secgroup.secgroup.id]
  metadata           = { "sid" : "xaas", "product" : "grafana" }
  user_data          = ivkcs_user_data.init.user_data[0]

  block_device {
    uuid                  = data.vkcs_images_image.grafana.id
    source_type           = "image"
    destination_type      = "volume"
    volume_size           = 10
    delete_on_termination = true
  }

  network {
    uuid = vkcs_networking_network.net.id
  }

  depends_on = [vkcs_networking_subnet.subnet]
}

# Provisioning through the Marketplace agent (VK: tf_manifest_script,
# ivkcs_agent_exec): hosts are the VM names above.
resource "ivkcs_agent_exec" "start" {
  hosts = ["grafana-${var.instance_uuid}"]
  name  = "start_grafana"
  uuid  = var.instance_uuid

  step {
    index   = 1
    type    = "bash"
    content = <<-EOT
      #!/bin/bash
      set -e
      systemctl enable --now grafana-server
    EOT
    options {
      timeout  = "10m"
      cwd      = "/tmp"
      attempts = 2
    }
  }

  step {
    index   = 2
    type    = "bash"
    content = "curl -fsS http://127.0.0.1:3000/api/health"
    options {
      attempts      = 10
      attempt_pause = "15s"
    }
  }

  depends_on = [vkcs_compute_instance.grafana]
}

# Monitoring (VK: tf_manifest_monitoring, ivkcs_agent_check).
resource "ivkcs_agent_check" "health" {
  hosts = ["grafana-${var.instance_uuid}"]
  uuid  = var.instance_uuid

  http_health {
    protocol   = "http"
    method     = "GET"
    host       = "127.0.0.1"
    port       = 3000
    path       = "/api/health"
    http_codes = [200]
    period     = "1m"
  }

  depends_on = [ivkcs_agent_exec.start]
}

output "grafana_url" {
  value = "http://${vkcs_compute_instance.grafana.access_ip_v4}:3000"
}
