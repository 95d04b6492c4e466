"""The conversation store's interface (`base`) and which one a location names (`opening`);
what both stores do alike (`journal`, `leases`); PostgreSQL's store (`pgstore`, `pgrows`
for map results, `pgschema`) and its setup, user roles and usage report (`postgres`).
The SQLite store is `agentrt_jupyter.store`."""
