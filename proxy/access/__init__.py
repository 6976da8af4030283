"""Authorization: who may do what (identity policies, key policies), decided before any I/O."""
