"""Cron schedules: rules, the table, the service behind /schedules and the ticker."""
