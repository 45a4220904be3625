"""Redaction table: secret shapes that must be replaced, everyday text that must stay as is."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmdop.core.redact import MARK, redact

# (input, the secret that must disappear, a piece of context that must remain)
SECRETS = [
    ("curl -H 'Authorization: Bearer eyJhbGciOi.abcdef12345' https://api", "eyJhbGciOi.abcdef12345", "curl -H"),
    ("curl -H \"Authorization: Basic dXNlcjpwYXNzd29yZA==\" x", "dXNlcjpwYXNzd29yZA==", "Authorization: Basic"),
    ("wget --header='Authorization: token 0123abcdWXYZ' u", "0123abcdWXYZ", "wget"),
    ("http GET api.example.com 'Bearer:ok' Bearer s3cr3tT0kenValue", "s3cr3tT0kenValue", "http GET"),
    ("curl -H 'X-Api-Key: live_abc123xyz' https://x", "live_abc123xyz", "X-Api-Key"),
    ("curl -H 'PRIVATE-TOKEN: qwerty12345' https://gitlab", "qwerty12345", "gitlab"),
    ("mysql -uroot -pHunter22 prod", "Hunter22", "mysql -uroot -p"),
    ("mysqldump --user=root -pHunter22 db > x.sql", "Hunter22", "mysqldump"),
    ("mariadb -h db -pHunter22", "Hunter22", "mariadb -h db"),
    ("sshpass -p Hunter22 ssh host", "Hunter22", "ssh host"),
    ("redis-cli -h r -a Hunter22 ping", "Hunter22", "ping"),
    ("curl -u admin:Hunter22 https://x", "Hunter22", "admin:"),
    # found by a black-box pass: the colon and spaced forms, Samba's user%password
    ("echo password: Hunter2pw", "Hunter2pw", "echo password:"),
    ("echo api_key: Hunter2pw >> cfg.yaml", "Hunter2pw", ">> cfg.yaml"),
    ("echo PASSWORD = Hunter2pw", "Hunter2pw", "PASSWORD ="),
    ("printf 'db-password:\tHunter2pw'", "Hunter2pw", "db-password:"),
    ("smbclient -U bob%Hunter2pw //h/s", "Hunter2pw", "-U bob%"),
    ("smbclient //h/s --user=bob%Hunter2pw -c ls", "Hunter2pw", "--user=bob%"),
    ("psql --password=Hunter22 -h db", "Hunter22", "-h db"),
    ("tool --password Hunter22 --verbose", "Hunter22", "--verbose"),
    ("tool --db-password='two words' --x", "two words", "--x"),
    ("vault login --token=hvs.CAESIabc", "hvs.CAESIabc", "vault login"),
    ("aws configure set --secret-access-key abcdEFGH1234", "abcdEFGH1234", "aws configure"),
    ("cli --api-key=abc123 run", "abc123", "run"),
    ("export GITHUB_TOKEN=abc123def", "abc123def", "export GITHUB_TOKEN="),
    ("DB_PASSWORD=hunter2 ./migrate", "hunter2", "./migrate"),
    ("MY_SECRET=\"two words\" run", "two words", "run"),
    ("api_key=abcdef ./x", "abcdef", "./x"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG env", "wJalrXUtnFEMI/K7MDENG", "env"),
    ("APIKEY=zzz9 run", "zzz9", "run"),
    ("MYSQL_PWD=Hunter22 mysql -uroot", "Hunter22", "mysql -uroot"),
    ("DB_PASS=Hunter22 ./app", "Hunter22", "./app"),
    ("kubectl create secret generic db --from-literal=password=Hunter22", "Hunter22", "--from-literal="),
    ("SSH_PASSPHRASE=open-sesame ssh-add", "open-sesame", "ssh-add"),
    # round 3: quoted values taken whole, and forms that used to pass whole
    ('true #API_KEY="abc\\"def ghi jkl" ./run', 'def ghi jkl', "./run"),
    ("tool --password=$'hunter2 with space'", "with space", "tool --password="),
    ("docker login -u me -p Hunter22 registry", "Hunter22", "registry"),
    ("openssl enc -aes256 -k Hunter22 -in x", "Hunter22", "-in x"),
    ("openssl rsa -passin pass:Hunter22 -in k", "Hunter22", "-passin pass:"),
    ("htpasswd -b .htpasswd bob Hunter22", "Hunter22", "htpasswd -b .htpasswd bob"),
    ("curl -H 'Cookie: session=abc123' x", "abc123", "curl -H"),
    ("AUTH=Hunter22 ./x", "Hunter22", "./x"),
    ("echo Hunter22 | sudo -S apt update", "Hunter22", "sudo -S apt update"),
    ("curl 'https://x/api?access_token=abc999&page=2'", "abc999", "page=2"),
    ("curl -d '{\"user\":\"a\",\"password\":\"Hunter22\"}' x", "Hunter22", "\"user\":\"a\""),
    ("git clone https://bob:Hunter22@github.com/org/repo.git", "Hunter22", "https://bob:"),
    ("echo '-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----' > k",
     "MIIEowIBAAKCAQEA", "> k"),
    ("echo -----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1rZXktdjEAAAAA", "b3BlbnNzaC1rZXktdjEAAAAA", "echo"),
    ("aws s3 ls --profile x # AKIAIOSFODNN7EXAMPLE", "IOSFODNN7EXAMPLE", "aws s3 ls"),
    ("gh auth login ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "gh auth"),
    ("echo github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "11ABCDEFG0123456789_abcdefghijklmnop", "echo"),
    ("git push https://oauth2@gitlab.com glpat-xxxxxxxxxxxxxxxxxxxx", "xxxxxxxxxxxxxxxxxxxx", "git push"),
    ("slack xoxb-123456789012-abcdefABCDEF", "123456789012-abcdefABCDEF", "slack"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLyjWDarjtT1zdp7dc", "stripe"),
    ("OPENAI sk-proj-abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz", "OPENAI"),
    ("claude sk-ant-api03-abcdefghijklmnopqrstu", "api03-abcdefghijklmnopqrstu", "claude"),
    ("maps AIzaSyA1234567890abcdefghijklmnopqrstuv", "SyA1234567890abcdefghijklmnopqrstuv", "maps"),
    ("npm npm_abcdefghijklmnopqrstuvwxyz0123456789", "abcdefghijklmnopqrstuvwxyz0123456789", "npm"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
     "dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk", "jwt"),
    ("echo Zx8Kq2LmN9pR4tV7wY1aB3cD5eF6gH0jK2 | base64 -d", "Zx8Kq2LmN9pR4tV7wY1aB3cD5eF6gH0jK2", "| base64 -d"),
    ("curl https://hooks.example.com/T000/aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5",
     "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5", "https://hooks.example.com/T000/"),
]

# Everyday commands, paths and identifiers that must come out unchanged.
NOT_SECRETS = [
    "AUTHOR=bob git commit", "echo hello | sudo tee /tmp/x", "docker ps -a", "openssl version",
    "uptime",
    "ls -la /var/log",
    "ls -pla /tmp",
    "mkdir -p /srv/app/releases/2026-04-27",
    "ssh -p 2222 deploy@host",
    "mysql -p prod",
    "git show 3f786850e387550fdab836ed7e6dc881de23001b",
    "git log --oneline 3f78685..HEAD",
    "docker pull nginx@sha256:0a5b6c8f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7",
    "sha256sum /usr/lib/x86_64-linux-gnu/libGLESv2.so.2.1.0",
    "cat /home/ubuntu/projects/MyVeryLongProjectName2024/src/MainApplicationController.java",
    "kubectl get pods -n kube-system -o wide --selector=app.kubernetes.io/name=ingress-nginx",
    "echo 123e4567-e89b-12d3-a456-426614174000",
    "grep -r TODO src/",
    "PWD=/tmp ls",
    "OLDPWD=/srv cd -",
    "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null host",
    "apt-key list",
    "BYPASS_CACHE=1 make",
    "COMPASS_DIR=/opt/compass run",
    "KEYBOARD=us setupcon",
    "ssh-keygen -t ed25519 -f ~/.ssh/id_ed25519",
    "cp --preserve=mode,ownership a b",
    "psql --no-password -h db -U app",
    "tool --password-file /run/secrets/db --verbose",
    "journalctl -u cmdop --since '1 hour ago'",
    "/var/lib/docker/overlay2/l/ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "python3 -c 'print(1)'",
    "tar czf backup-2026-04-27.tar.gz /srv/data",
    "curl https://example.com/path?page=2&sort=asc",
    "vps-audi",
    "[ \"$x\" == y ] && echo token",
    "printf '%s: %d\\n' name 3",
    "smbclient -L //h -N",
    "",
]


@pytest.mark.parametrize("text, secret, context", SECRETS)
def test_secret_is_redacted(text, secret, context):
    out, changed = redact(text)
    assert changed and MARK in out
    assert secret not in out, out
    assert context in out, out


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_non_secret_is_kept(text):
    assert redact(text) == (text, False)


def test_known_prefix_is_kept_short():
    out, _ = redact("key AKIAIOSFODNN7EXAMPLE end")
    assert out == "key AKIA[REDACTED] end"
    out, _ = redact("t ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789")
    assert out == "t ghp_[REDACTED]"


def test_cut_off_private_key_block_is_redacted_to_the_end():
    out, changed = redact("cat <<EOF\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC")
    assert changed and out == "cat <<EOF\n-----BEGIN PRIVATE KEY-----[REDACTED]"


@pytest.mark.parametrize("text", [t for t, _, _ in SECRETS] + NOT_SECRETS)
def test_idempotent(text):
    once, _ = redact(text)
    assert redact(once) == (once, False)


@given(st.text(max_size=300))
def test_never_raises_and_says_when_it_changed(text):
    once, changed = redact(text)
    assert changed == (once != text)


@given(st.text(alphabet="abcXYZ019 -_=:/", max_size=60), st.sampled_from([t for t, _, _ in SECRETS]))
def test_secret_stays_redacted_inside_other_text(prefix, secret_text):
    _, secret, _ = next(x for x in SECRETS if x[0] == secret_text)
    out, changed = redact(prefix + " " + secret_text)
    assert changed and secret not in out


@pytest.mark.parametrize("unit", ["-", "--token", "key_", "x-", "\"token", "http://a:", "bearer ", "mysql -x ",
                                  "aB3", "a=", "/"])
def test_adversarial_repetitions_finish(unit):
    # Every pattern is bounded so none backtracks badly; a catastrophic one would hit the timeout.
    text = unit * 20_000
    out, _ = redact(text)
    assert redact(out)[0] == out
