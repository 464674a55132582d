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

resource "vkcs_compute_instance" "grafana" {
  name               = "grafana-${var.instance_uuid}"
  flavor_id          = var.flavor
  security_group_ids = [vkcs_networking_secgroup.secgroup.id]
  metadata           = { "sid" : "xaas", "product" : "grafana" }

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

output "grafana_url" {
  value = "http://${vkcs_compute_instance.grafana.access_ip_v4}:3000"
}
