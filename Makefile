# Thin wrappers around the careflow-ha CLI (./careflow-ha installs what it needs first).
CLI := ./careflow-ha

.PHONY: up down purge status provision test test-quick drills bench lint

up:            ## lab hosts -> provisioned cluster -> demo data
	$(CLI) up
down:          ## remove the hosts, keep the data volumes
	$(CLI) down
purge:         ## remove the hosts and their data
	$(CLI) down --purge --force
status:        ## Patroni members and HAProxy backends
	$(CLI) status
provision:     ## re-run the playbook (idempotent)
	$(CLI) provision
test:          ## the whole suite, as CI runs it
	$(CLI) test
test-quick:    ## unit tests only
	$(CLI) test --quick
drills:        ## every failover drill, with reports in reports/drills/
	$(CLI) drill all --force
bench:         ## benchmarks (ratios measured side by side)
	$(CLI) bench partitioning
lint:          ## ruff + yamllint
	.venv/bin/ruff check careflow_ha tests loadtests
	.venv/bin/yamllint -s roles inventory site.yml docker-compose.yml
	.venv/bin/ansible-lint --offline site.yml roles
