"""The container lab on the control host: hosts, engine, node image, SSH access, wheelhouse, host checks.

Below every feature: provisioning and drills use it, it uses none of them.
"""
