"""Container images built offline into OCI archives (scripts/build-images); definitions in images/*/image.yaml."""
