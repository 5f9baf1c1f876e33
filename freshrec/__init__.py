"""The ``freshrec`` command (:mod:`freshrec.cli`, one module per subcommand), the HTTP
service (``serve*``), the synthetic storefront generator and the dataset adapters."""
