"""Debian's python3-docker (docker-py) against pierd: run by TestPythonSDK with
DOCKER_HOST pointing at a pierd in a test namespace."""
import json
import subprocess
import uuid

import docker
import pytest


@pytest.fixture(scope="module")
def client():
    c = docker.from_env()
    yield c
    c.close()


def uniq(prefix):
    return prefix + "-" + uuid.uuid4().hex[:6]


def sandbox(client, name, network, **extra):
    """Creates a pier sandbox (pier's own route: docker-py has no such call)."""
    body = {"Name": name, "Networks": [dict(Network=network, **extra)]}
    return client.api._result(client.api._post_json(client.api._url("/pier/v1/sandboxes"), data=body), json=True)


def remove_sandbox(client, name):
    client.api._raise_for_status(client.api._delete(client.api._url("/pier/v1/sandboxes/{0}", name), params={"force": "true"}))


def nslookup(key, name):
    """Asks the sandbox's embedded DNS with busybox nslookup; None if unresolved."""
    r = subprocess.run(["nsenter", "--net=" + key, "busybox", "nslookup", "-type=a", name, "127.0.0.11"],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        return None
    answers = r.stdout.split("Name:", 1)
    return answers[1].split("Address:")[1].split()[0].strip() if len(answers) > 1 else None


@pytest.mark.parametrize("name", ["test 01", "réseau-ü", "a/b", "n" * 129])
def test_network_names(client, name):
    net = client.networks.create(name)
    try:
        assert client.networks.get(name).id == net.id
        assert client.networks.get(net.id).name == name
        assert name in [n.name for n in client.networks.list()]
    finally:
        net.remove()
    with pytest.raises(docker.errors.NotFound):
        client.networks.get(net.id)


def test_blank_name_refused(client):
    with pytest.raises(docker.errors.APIError) as e:
        client.networks.create("  ")
    assert e.value.status_code == 400


def test_link_before_target(client):
    net = client.networks.create(uniq("links"))
    c1, later = uniq("c"), uniq("later")
    info = sandbox(client, c1, net.name, Links=[later + ":soon"])
    try:
        assert nslookup(info["Key"], "soon") is None
        target = sandbox(client, later, net.name)
        assert nslookup(info["Key"], "soon") == target["Endpoints"][0]["IPv4Address"].split("/")[0]
        remove_sandbox(client, later)
        assert nslookup(info["Key"], "soon") is None
    finally:
        remove_sandbox(client, c1)
        net.remove()


def test_link_local_ips(client):
    net = client.networks.create(uniq("ll"))
    a, b = uniq("a"), uniq("b")
    sandbox(client, a, "bridge")
    info_b = sandbox(client, b, net.name, LinkLocalIPs=["169.254.9.3"])
    try:
        with pytest.raises(docker.errors.APIError) as e:
            net.connect(a, link_local_ips=["10.1.2.3"])
        assert e.value.status_code == 400 and "link-local" in str(e.value)
        net.connect(a, link_local_ips=["169.254.9.2"])
        key = client.api._result(client.api._get(client.api._url("/pier/v1/sandboxes/{0}", a)), json=True)["Key"]
        out = subprocess.run(["nsenter", "--net=" + key, "ip", "-j", "addr"], check=True, capture_output=True, text=True).stdout
        assert "169.254.9.2" in [a["local"] for l in json.loads(out) for a in l.get("addr_info", [])]
        subprocess.run(["nsenter", "--net=" + info_b["Key"], "ping", "-c1", "-W2", "169.254.9.2"], check=True, capture_output=True)
    finally:
        remove_sandbox(client, a)
        remove_sandbox(client, b)
        net.remove()


def test_scope_lookups(client):
    net = client.networks.create(uniq("scope"))
    try:
        assert client.networks.get(net.id, scope="local").id == net.id
        with pytest.raises(docker.errors.NotFound):
            client.networks.get(net.id, scope="swarm")
    finally:
        net.remove()


def test_prune(client):
    unused, used = client.networks.create(uniq("prune")), client.networks.create(uniq("keep"))
    s = uniq("s")
    sandbox(client, s, used.name)
    try:
        deleted = client.networks.prune()["NetworksDeleted"]
        assert unused.name in deleted and used.name not in deleted
    finally:
        remove_sandbox(client, s)
        used.remove()


def test_network_containers(client):
    net = client.networks.create(uniq("members"))
    s = uniq("s")
    info = sandbox(client, s, net.name)
    try:
        net.reload()
        assert [c.id for c in net.containers] == [info["ID"]]
    finally:
        remove_sandbox(client, s)
        net.remove()
