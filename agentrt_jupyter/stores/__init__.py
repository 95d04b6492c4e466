"""The conversation store's interface (`base`) and its PostgreSQL implementation
(`postgres`); the SQLite one is `agentrt_jupyter.store`."""
