"""A run's results and what is read from them: the records and the results document (``results``), statistics,
the verdict, the workload tables and Markdown report (``tables``), charts and the performance bar (``bars``)."""
