"""The TRACE network as plain torch modules and pure functions (no AnnData here)."""
