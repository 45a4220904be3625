"""Pure policy logic: floor, patterns, shell parsing, rules and the gate. No I/O."""
