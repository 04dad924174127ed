"""The engine every pipeline runs on: rows and rejects (rows.py); the Plan of a DAG with the columns
each step reads and writes, a declaration (plan.py), its kinds of step (steps.py) and the executors
that run it (execute.py); the driver of a run (driver.py); the registries of datasets (registry.py)
and of model roles (roles.py); the cost model and pools (costs.py, pools.py); the dataset card
(card.py); leases (lease.py); config base classes (config.py) and the `subjectforge` command
(cli.py, the top floor). Depends on schemas/ only, never on a pipeline, a stage or a worker."""
