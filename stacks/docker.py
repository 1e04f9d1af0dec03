"""Docker: a container running sshd on the local (or DOCKER_HOST) engine, for development without a cloud."""

from __future__ import annotations

import base64
import os
import subprocess
from urllib.parse import urlparse

import pulumi
import pulumi.dynamic
import pulumi_docker as docker

from stacks import common
from stacks.catalog import DOCKER, DOCKER_SIZES
from stacks.spec import InstanceDoc, SnapshotDoc, SshUser

SDK_MODULES = ()

# Creates the spec's users from $ORCH_SSH_USERS, one line per user: "<name> <yes|no> <key>"
# with the name and the key line base64-encoded, so that no character of either can move
# a field or start another line. A name that is not a plain user name stops the container.
# The sudoers file is the one the playbook's ssh_users role manages.
USERS_SCRIPT = r"""export LC_ALL=C  # so that [a-z] below means the ASCII letters only
printf '%s\n' "$ORCH_SSH_USERS" | while read -r name_b64 sudo key_b64 extra; do
  [ -n "$name_b64" ] || continue
  # The trailing x keeps any trailing newline of the name, for the check below to refuse.
  name=$(printf '%s' "$name_b64" | base64 -d && echo x) || { echo "orch: user $name_b64 is not base64" >&2; exit 1; }
  name=${name%x}
  # The shell drops NUL bytes from the decoded name: encoding it again must give the same text.
  [ "$(printf '%s' "$name" | base64 -w 0)" = "$name_b64" ] || { echo "orch: refusing user name (base64) $name_b64" >&2; exit 1; }
  case "$name" in
    ""|-*|*[!a-z0-9_-]*) echo "orch: refusing user name (base64) $name_b64" >&2; exit 1 ;;
  esac
  case "$sudo" in
    yes|no) ;;
    *) echo "orch: user $name: sudo must be yes or no" >&2; exit 1 ;;
  esac
  [ -z "$extra" ] || { echo "orch: user $name: unexpected fields" >&2; exit 1; }
  newlines=$(printf '%s' "$key_b64" | base64 -d | wc -l)
  [ "$newlines" -eq 0 ] || { echo "orch: user $name: the key is not one line" >&2; exit 1; }
  id "$name" >/dev/null 2>&1 || useradd -m -s /bin/bash "$name"
  install -d -m 700 -o "$name" -g "$name" "/home/$name/.ssh"
  printf '%s' "$key_b64" | base64 -d > "/home/$name/.ssh/authorized_keys"
  echo >> "/home/$name/.ssh/authorized_keys"
  chown "$name:$name" "/home/$name/.ssh/authorized_keys"
  chmod 600 "/home/$name/.ssh/authorized_keys"
  if [ "$sudo" = yes ]; then
    install -d -m 750 /etc/sudoers.d
    echo "$name ALL=(ALL) NOPASSWD:ALL" > "/etc/sudoers.d/orch-$name"
    chmod 440 "/etc/sudoers.d/orch-$name"
  else
    rm -f "/etc/sudoers.d/orch-$name"
  fi
done
"""

# Runs as the container's command: installs sshd (and python3 for Ansible)
# when the image lacks them (a snapshot image already has them), authorizes
# the login keys for root, creates the spec's users, then runs sshd.
ENTRYPOINT_SCRIPT = (
    r"""set -eu
if [ ! -x /usr/sbin/sshd ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends openssh-server python3 sudo
fi
mkdir -p /run/sshd /root/.ssh
chmod 700 /root/.ssh
printf '%s\n' "$ORCH_AUTHORIZED_KEYS" > /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
"""
    + USERS_SCRIPT
    + """ssh-keygen -A
exec /usr/sbin/sshd -D -e
"""
)


def ssh_users_env(users: list[SshUser]) -> str:
    """$ORCH_SSH_USERS for USERS_SCRIPT: one line per user, name and key line base64-encoded."""

    def encoded(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return "\n".join(
        f"{encoded(user.name)} {'yes' if user.sudo else 'no'} {encoded(user.public_key.strip())}" for user in users
    )


def docker_host_address() -> str:
    """Where published ports are reached: DOCKER_HOST's host for a remote engine, else this machine."""
    url = urlparse(os.environ.get("DOCKER_HOST", ""))
    if url.scheme in ("tcp", "ssh", "http", "https") and url.hostname:
        return url.hostname
    return "127.0.0.1"


def _labels(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"label": key, "value": value} for key, value in sorted(tags.items())]


def instance_program(instance: InstanceDoc, *, admin_public_key: str, base_image_id: str | None) -> None:
    spec = instance.spec
    ssh_user = common.login_user(DOCKER, instance)
    if base_image_id:
        image_id: pulumi.Input[str] = base_image_id
    else:
        # keep_locally: base images are shared with everything else on the engine.
        image = docker.RemoteImage(instance.name, name=common.catalog_image(DOCKER, instance).ref, keep_locally=True)
        image_id = image.image_id
    cpus, memory_mib = DOCKER_SIZES[spec.machine_type]
    container = docker.Container(
        instance.name,
        image=image_id,
        cpus=str(cpus),
        memory=memory_mib,
        hostname=instance.name,
        command=["/bin/sh", "-c", ENTRYPOINT_SCRIPT],
        envs=[
            "ORCH_AUTHORIZED_KEYS=" + "\n".join(common.login_keys(instance, admin_public_key)),
            "ORCH_SSH_USERS=" + ssh_users_env(spec.ssh_users),
        ],
        ports=[{"internal": 22}],  # the engine picks a free host port
        restart="unless-stopped",
        # The power state (docs/lifecycle.md): a stopped container keeps its writable layer (its disk).
        must_run=spec.state == "running",
        start=spec.state == "running",
        labels=_labels(common.instance_tags(instance)),
    )
    common.export_instance(
        cloud="docker",
        instance=instance,
        instance_id=container.id,
        public_ip=None if spec.state == "stopped" else docker_host_address(),
        private_ip=container.network_datas.apply(lambda networks: networks[0].ip_address if networks else None),
        ssh_user=ssh_user,
        image_id=container.image,
        zone=spec.zone or "local",
        # A stopped container publishes no port; a start publishes 22 on a new host port.
        ssh_port=container.ports.apply(lambda ports: next((p.external for p in ports or [] if p.internal == 22), None)),
        # The container's writable layer is its root disk: a snapshot commits it.
        root_disk_id=container.id,
    )


class _CommitProvider(pulumi.dynamic.ResourceProvider):
    """`docker commit` on create, `docker image rm` on delete; the image id is the resource id."""

    def create(self, props: dict) -> pulumi.dynamic.CreateResult:
        _docker("commit", props["container_id"], props["tag"])
        image_id = _docker("image", "inspect", "--format", "{{.Id}}", props["tag"])
        return pulumi.dynamic.CreateResult(id_=image_id, outs=props)

    def diff(self, _id: str, olds: dict, news: dict) -> pulumi.dynamic.DiffResult:
        changed = [key for key in ("container_id", "tag") if olds.get(key) != news.get(key)]
        return pulumi.dynamic.DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=True)

    def delete(self, _id: str, props: dict) -> None:
        try:
            _docker("image", "rm", props["tag"])
        except RuntimeError as error:
            if "No such image" not in str(error):
                raise


def _docker(*args: str) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"docker {args[0]} failed: {result.stderr.strip()}")
    return result.stdout.strip()


class CommittedImage(pulumi.dynamic.Resource):
    """An image committed from a container; its id is the image id."""

    def __init__(self, name: str, *, container_id: pulumi.Input[str], tag: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__(_CommitProvider(), name, {"container_id": container_id, "tag": tag}, opts)


def snapshot_program(snapshot: SnapshotDoc, *, source: dict) -> None:
    image = CommittedImage(snapshot.name, container_id=source["root_disk_id"], tag=f"orch-snapshot/{snapshot.name}:latest")
    common.export_snapshot(cloud="docker", source=source, image_id=image.id)


def classify_error(message: str) -> common.CloudError | None:
    """The docker target has one location: no error is one another zone would avoid."""
    return None
