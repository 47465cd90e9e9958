"""reconcilers: the controller framework (runtime/) and the five controllers (controllers/)."""
