"""PostgreSQL password verifiers computed from a secret, the same way on every run.

PgBouncer's ``auth_file`` must never hold a plaintext password, yet both
provisioners must write byte-identical files and a second run must change
nothing. So the verifiers are derived from the secret alone: the SCRAM salt
is an HMAC of the secret (unique per secret, stable across runs). The secrets
are 32 random characters, so a salt that depends on the secret gives an
attacker nothing a random salt would not.

Used by Ansible (``filter_plugins/careflow.py``) and by the pyinfra inventory
reader (the same Jinja filter names), so templates call one implementation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

#: PostgreSQL's own default iteration count (scram_iterations, 4096 in PG 15).
SCRAM_ITERATIONS = 4096


def pg_md5(password: str, user: str) -> str:
    """PostgreSQL's md5 verifier: ``md5`` + md5(password + user) (what ``ALTER ROLE ... PASSWORD`` stores)."""
    return "md5" + hashlib.md5(f"{password}{user}".encode()).hexdigest()  # noqa: S324  # PostgreSQL's format


def scram_sha256(password: str, user: str = "", iterations: int = SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier (RFC 5802/7677, PostgreSQL's text form) with a salt derived from the secret."""
    salt = hmac.new(password.encode(), f"careflow-scram-salt:{user}".encode(), hashlib.sha256).digest()[:16]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


#: Jinja filter name -> function, for Ansible and for the pyinfra inventory reader.
FILTERS = {"careflow_pg_md5": pg_md5, "careflow_scram_sha256": scram_sha256}
