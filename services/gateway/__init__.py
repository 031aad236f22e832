"""Research gateway: combined case endpoints, cohort statistics, exports and dashboard."""
