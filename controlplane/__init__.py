"""controlplane: the Django project and the platform's domain apps."""
