"""pyinfra deploys: the same cluster as the Ansible roles, from Python.

One ``@deploy`` per component (common, etcd, postgresql, patroni, haproxy),
driven by the Ansible inventory and rendering the roles' own templates (see
``careflow_ha.provision.inventory``). Only code that runs inside pyinfra's
process lives here; the CLI starts it through ``careflow_ha.provision.pyinfra``.
"""
