"""Parts of a build: extraction, the sandbox, targets, repair and provenance."""
