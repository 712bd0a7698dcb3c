"""flannel's two halves: the node agent (flanneld's job) and the CNI plugin.

Deliberately empty of imports: the CNI plugin runs once per pod ADD/DEL and must not
pay for the agent's netlink and store dependencies.
"""
