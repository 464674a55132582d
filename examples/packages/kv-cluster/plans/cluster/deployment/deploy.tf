# KV Cluster: a primary and var.replicas replicas. Written after VK's
# published examples (tf_manifest_steps' Grafana manifest,
# ivkcs_agent_script_result): the primary's token reaches the replicas as
# a script result, the primary is watched by an HTTP health check.

# --------------------variables--------------------
# Special variables, set by the marketplace.
variable "instance_uuid" {
  type = string
}

variable "email" {
  type    = string
  default = "user@example.com"
}

# Options (parameters/*.yaml).
variable "flavor" {
  type = string
}

variable "replicas" {
  type    = number
  default = 1
}

variable "api_port" {
  type    = number
  default = 7000
}

locals {
  short_name    = substr(var.instance_uuid, 0, 8)
  primary_name  = "${local.short_name}-kv-primary"
  replica_names = [for i in range(var.replicas) : "${local.short_name}-kv-replica-${i}"]
  hosts_names   = concat([local.primary_name], local.replica_names)
  ports         = toset(["22", tostring(var.api_port)])
}

# ---------------------data------------------------
data "vkcs_images_image" "kv" {
  name = "kv-debian12"
}

# --------------------network----------------------
resource "vkcs_networking_network" "net" {
  name = "${local.short_name}-kv"
}

resource "vkcs_networking_subnet" "subnet" {
  name       = "${local.short_name}-kv"
  network_id = vkcs_networking_network.net.id
  cidr       = "192.168.200.0/24"
}

resource "vkcs_networking_secgroup" "secgroup" {
  name = "${local.short_name}-kv"
}

resource "vkcs_networking_secgroup_rule" "rules" {
  for_each          = local.ports
  direction         = "ingress"
  protocol          = "tcp"
  port_range_min    = tonumber(each.value)
  port_range_max    = tonumber(each.value)
  remote_ip_prefix  = "0.0.0.0/0"
  security_group_id = vkcs_networking_secgroup.secgroup.id
  description       = "rule_tcp_${each.key}"
}

# --------------------secrets----------------------
resource "random_password" "admin" {
  length  = 20
  special = false
}

resource "ivkcs_ssh_keypair" "keypair" {}

# --------------------VMs--------------------------
resource "ivkcs_user_data" "user_data" {
  uuid      = var.instance_uuid
  hosts     = local.hosts_names
  target_os = "debian114"

  ssh_authorized_keys = [
    ivkcs_ssh_keypair.keypair.public_key,
  ]
}

resource "vkcs_compute_instance" "primary" {
  name               = local.primary_name
  flavor_id          = var.flavor
  security_group_ids = [vkcs_networking_secgroup.secgroup.id]
  metadata           = { "sid" : "xaas", "product" : "kv-cluster" }
  user_data          = ivkcs_user_data.user_data.user_data[0]

  block_device {
    uuid                  = data.vkcs_images_image.kv.id
    source_type           = "image"
    destination_type      = "volume"
    volume_size           = 4
    delete_on_termination = true
  }

  network {
    uuid = vkcs_networking_network.net.id
  }

  depends_on = [vkcs_networking_subnet.subnet]
}

resource "vkcs_compute_instance" "replica" {
  count              = var.replicas
  name               = local.replica_names[count.index]
  flavor_id          = var.flavor
  security_group_ids = [vkcs_networking_secgroup.secgroup.id]
  metadata           = { "sid" : "xaas", "product" : "kv-cluster" }
  user_data          = ivkcs_user_data.user_data.user_data[count.index + 1]

  block_device {
    uuid                  = data.vkcs_images_image.kv.id
    source_type           = "image"
    destination_type      = "volume"
    volume_size           = 4
    delete_on_termination = true
  }

  network {
    uuid = vkcs_networking_network.net.id
  }

  depends_on = [vkcs_networking_subnet.subnet]
}

# --------------------scripts----------------------
# The primary: a join token, the API as a service, the token as a
# structured result for the replicas.
resource "ivkcs_agent_exec" "primary" {
  hosts = [local.primary_name]
  name  = "init_primary"
  uuid  = var.instance_uuid

  step {
    index   = 1
    type    = "bash"
    content = <<-EOT
      #!/bin/bash
      set -eu
      install -d -m 0700 /var/lib/kv
      if [ ! -s /var/lib/kv/token ]; then
        head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > /var/lib/kv/token
      fi
      printf '%s' '${random_password.admin.result}' > /var/lib/kv/admin-password
      chmod 0600 /var/lib/kv/token /var/lib/kv/admin-password
      printf '{"token":"%s","port":${var.api_port}}\n' "$(cat /var/lib/kv/token)" > /tmp/kv-init.json
      echo "primary ${local.primary_name} initialised"
    EOT
    options {
      structured_result_file = "/tmp/kv-init.json"
      timeout                = "1m"
      attempts               = 2
      once                   = true
    }
  }

  step {
    index   = 2
    type    = "bash"
    content = <<-EOT
      #!/bin/bash
      set -eu
      cat > /usr/local/bin/kv-primary <<'PY'
      #!/usr/bin/python3
      # The KV API: /join?token=T&host=H records H if T is the token;
      # /health answers 200; /joined lists the hosts that joined.
      import http.server, json, urllib.parse
      TOKEN = open("/var/lib/kv/token").read().strip()
      JOINED = "/var/lib/kv/joined"
      class Handler(http.server.BaseHTTPRequestHandler):
          def answer(self, code, body):
              data = json.dumps(body).encode()
              self.send_response(code)
              self.send_header("Content-Type", "application/json")
              self.send_header("Content-Length", str(len(data)))
              self.end_headers()
              self.wfile.write(data)
          def do_GET(self):
              url = urllib.parse.urlparse(self.path)
              query = urllib.parse.parse_qs(url.query)
              try:
                  joined = open(JOINED).read().split()
              except FileNotFoundError:
                  joined = []
              if url.path == "/health":
                  self.answer(200, {"status": "ok"})
              elif url.path == "/joined":
                  self.answer(200, {"joined": joined})
              elif url.path == "/join":
                  if query.get("token", [""])[0] != TOKEN:
                      self.answer(403, {"error": "wrong token"})
                      return
                  host = query.get("host", [""])[0]
                  if host and host not in joined:
                      with open(JOINED, "a") as f:
                          f.write(host + "\n")
                      joined.append(host)
                  self.answer(200, {"joined": joined})
              else:
                  self.answer(404, {"error": "no such path"})
      http.server.ThreadingHTTPServer(("0.0.0.0", ${var.api_port}), Handler).serve_forever()
      PY
      chmod 0755 /usr/local/bin/kv-primary
      cat > /etc/systemd/system/kv-primary.service <<'UNIT'
      [Unit]
      Description=KV Cluster primary
      After=network-online.target
      [Service]
      ExecStart=/usr/local/bin/kv-primary
      Restart=always
      [Install]
      WantedBy=multi-user.target
      UNIT
      systemctl daemon-reload
      systemctl enable --now kv-primary.service
      curl -fsS --retry 10 --retry-delay 1 --retry-connrefused http://127.0.0.1:${var.api_port}/health
    EOT
    options {
      timeout  = "2m"
      attempts = 2
    }
  }

  depends_on = [vkcs_compute_instance.primary]
}

data "ivkcs_agent_script_result" "primary_init" {
  uuid  = var.instance_uuid
  host  = local.primary_name
  group = ivkcs_agent_exec.primary.name
  index = 1

  depends_on = [ivkcs_agent_exec.primary]
}

# Give the primary's API a moment before the replicas join (VK:
# time_sleep between resources).
resource "time_sleep" "after_primary" {
  create_duration = "3s"

  depends_on = [ivkcs_agent_exec.primary]
}

# The replicas join the primary over the private network with its token.
resource "ivkcs_agent_exec" "replicas" {
  hosts = local.replica_names
  name  = "join_replicas"
  uuid  = var.instance_uuid

  step {
    index   = 1
    type    = "bash"
    content = <<-EOT
      #!/bin/bash
      set -eu
      token='${jsondecode(data.ivkcs_agent_script_result.primary_init.structured_result)["token"]}'
      curl -fsS --retry 10 --retry-delay 2 --retry-connrefused \
        "http://${vkcs_compute_instance.primary.access_ip_v4}:${var.api_port}/join?token=$token&host=$(hostname)"
      echo
      echo "$(hostname) joined ${local.primary_name}"
    EOT
    options {
      timeout       = "2m"
      attempts      = 3
      attempt_pause = "5s"
    }
  }

  depends_on = [
    time_sleep.after_primary,
    vkcs_compute_instance.replica,
  ]
}

data "ivkcs_agent_script_result" "replica_join" {
  uuid  = var.instance_uuid
  host  = local.replica_names[0]
  group = ivkcs_agent_exec.replicas.name
  index = 1

  depends_on = [ivkcs_agent_exec.replicas]
}

# --------------------monitoring-------------------
resource "ivkcs_agent_check" "primary_http" {
  hosts = [local.primary_name]
  uuid  = var.instance_uuid

  http_health {
    protocol   = "http"
    method     = "GET"
    host       = vkcs_compute_instance.primary.access_ip_v4
    port       = var.api_port
    path       = "/health"
    http_codes = [200]
    period     = "30s"
  }

  timeouts {
    create = "5m"
  }

  depends_on = [ivkcs_agent_exec.primary]
}

# --------------------outputs----------------------
output "api_url" {
  value = "http://${vkcs_compute_instance.primary.access_ip_v4}:${var.api_port}"
}

output "first_replica" {
  value     = data.ivkcs_agent_script_result.replica_join.result
  sensitive = true
}

output "admin_password" {
  value     = random_password.admin.result
  sensitive = true
}

output "private_key" {
  value     = ivkcs_ssh_keypair.keypair.private_key
  sensitive = true
}
