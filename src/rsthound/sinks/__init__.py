"""Where results go: the SQLite history, webhooks and Alertmanager, the web server.

What may live here: writing results out (and reading the history back). May import
`analyze/`, `report/`, `model`; never sources/ or observe/.
"""
