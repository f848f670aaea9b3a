"""pyinfra deploys: the same cluster as the Ansible roles, from Python.

One ``@deploy`` per component (common, etcd, postgresql, patroni, haproxy),
driven by the Ansible inventory and rendering the roles' own templates (see
``inventory``). ``runner.run_pyinfra`` is the entry point the CLI uses.
"""
