"""Dataset name -> schema."""
from schemas import dip, iapo, multiid, uper
from schemas.contract import DatasetSchema

SCHEMAS: dict[str, DatasetSchema] = {
    s.name: s for s in (dip.SCHEMA, multiid.SCHEMA, multiid.REFS_SCHEMA, uper.SCHEMA, iapo.SCHEMA)
}


def get_schema(name: str) -> DatasetSchema:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(SCHEMAS)}") from None
