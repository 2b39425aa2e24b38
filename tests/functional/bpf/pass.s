# Two BPF programs that let every packet through, for the bypass-detection test:
# `cls` for tc ingress (direct action: TC_ACT_OK), `xdp_pass` for XDP (XDP_PASS).
# pass.o is this file assembled, checked in so the tests need no compiler:
#   llvm-mc -triple bpf -filetype=obj -o pass.o pass.s
	.text
	.section	tc,"ax",@progbits
	.globl	cls
	.type	cls,@function
cls:
	r0 = 0
	exit
.Lcls_end:
	.size	cls, .Lcls_end-cls

	.section	xdp,"ax",@progbits
	.globl	xdp_pass
	.type	xdp_pass,@function
xdp_pass:
	r0 = 2
	exit
.Lxdp_end:
	.size	xdp_pass, .Lxdp_end-xdp_pass

	.section	license,"aw",@progbits
	.globl	_license
	.type	_license,@object
_license:
	.asciz	"GPL"
	.size	_license, 4
