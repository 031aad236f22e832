"""Development tools that a hospital does not deploy: the phantom generator and the main
job (the demo). They use the services; the services never import them."""
