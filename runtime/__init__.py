"""The engine every pipeline runs on: rows and rejects (rows.py), the Plan of a DAG with the
columns each step reads and writes (plan.py), the driver of a run (driver.py), config base classes
(config.py) and the `subjectforge` command (cli.py). Depends on schemas/, never on a pipeline."""
