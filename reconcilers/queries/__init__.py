"""Set-based SQL building blocks the controllers share: clock arithmetic and keyset batches."""
