"""The bundled sample corpus (`samples/`) and its preparation (`prepare`, `chatbaker prepare-data`)."""
