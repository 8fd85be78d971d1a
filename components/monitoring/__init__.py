"""Fleet monitoring: a Prometheus agent per site remote-writing to one core Prometheus.

``rules`` renders the core's recording and alert rules from the sites' latency classes and the
catalog's model versions, ``agent`` the Kubernetes objects of a site's agent, ``core`` the core's
configuration; all three are pure. ``component`` (``SiteMonitoring``) registers an agent's objects.
"""
