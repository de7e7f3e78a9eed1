"""The run's report: `page` renders one HTML page from the run's tables and plots, `command` is `lens report`."""
