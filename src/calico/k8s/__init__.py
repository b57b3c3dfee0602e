"""The Kubernetes datastore (`DataplaneDriver = kubernetes`): Felix reads pods, namespaces,
NetworkPolicies, nodes and Calico's own resources from the Kubernetes API and turns them into the
same `/calico/v1` (key, value) updates the etcd syncer produces (docs/kubernetes.md).

Modules: `names` (Kubernetes names and labels, the IDs derived from them), `selectors`
(LabelSelector -> Calico selector text), `mapping` (pods, namespaces, nodes, Felix configuration
and IP pools -> keys), `policy` (NetworkPolicy -> policies), `model` (the objects and the keys
they own, diffed into updates) are pure. `settings` (where the API server is and how to
authenticate), `client` (a thin HTTP layer over `requests`), `syncer` (list, then watch, per
resource type) and `felix` (what calico-felix needs at start) do I/O. No module here imports etcd
or Neutron.
"""
