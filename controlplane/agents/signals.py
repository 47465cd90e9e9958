"""Signals the agents app sends, for apps above it that own what an agent holds."""

from django.dispatch import Signal

# Sent inside the revoke's transaction with agent_id, at (database clock) and actor. A
# receiver hands back the work the agent holds and returns the ids it released; the commands
# app requeues the agent's acknowledged and running commands (reason holder_revoked).
agent_revoked = Signal()
