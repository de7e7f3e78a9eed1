"""Human review of mined lesions: a self-contained browser page (one card per mined box), the verdicts it
exports, their validated import into ``review.parquet``, and a simulated reviewer for audits."""
