"""controlplane: the Django project and the platform's domain apps."""

from controlplane.celery import app as celery_app

__all__ = ("celery_app",)
