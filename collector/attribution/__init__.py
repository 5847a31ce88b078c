"""Who owns a GPU process: the part of the pipeline that reads what the host says about a process and decides
which pod, container, systemd unit or user it belongs to, trusting only what every source agrees on.

- cgroups: a process's cgroup path, read from the top, to the pod UID and container id kubelet and the
  runtimes put there (and nothing a tenant can name below its own container);
- runtimes: the runtimes' own files (containerd, CRI-O, Docker, podman, kubelet's pod logs) to namespace, pod
  and container names, with the cgroup each runtime recorded;
- podresources: kubelet's pod-resources socket (what each container was allocated), grpc imported only when
  the socket exists;
- cdi and allocation: a DRA claim's devices through their CDI specs, and which allocated device was used;
- join: the join of the above for each process, with the allocation check (`gpu_process_unallocated`).

docs/runtimes-and-cgroups.md and docs/allocation.md have the sources for every shape read here.
"""
