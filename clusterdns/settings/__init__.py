"""Settings of both modes: the schema, the YAML loader with line numbers, flags, the option reference."""
