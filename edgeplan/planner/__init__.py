"""planner/: LayerGraph costs + Cluster + Objective -> Plan. No torch, no TVM."""
